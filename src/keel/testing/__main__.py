from keel.testing.fake_openai import main

main()
